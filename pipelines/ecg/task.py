"""The ``ecg`` task: ProtoECGNet on PTB-XL (Sethi et al. 2025) behind the generic Task interface."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.protoecgnet import BRANCH_LABELS, LEADS, PTBXL_LABELS
from pipelines.common.checkpoint import Checkpoint
from pipelines.common.errors import InputError
from pipelines.common.task import (
    Collected,
    InputContract,
    InputItem,
    OutputHead,
    PredictOptions,
    Predictor,
    Task,
    TensorSpec,
    expand_paths,
    register_task,
)
from pipelines.ecg.config import MODEL_NAME, SAMPLING_RATE, EcgConfig, EcgOptions, EcgTrainOptions
from pipelines.ecg.readers import ARRAY_SUFFIXES, DICOM_SUFFIXES, MAX_READ_SECONDS
from pipelines.ecg.train import EcgRun
from pipelines.ecg.transforms import MAX_FS, MIN_FS

__all__ = ["EcgTask"]

#: PTB-XL metadata files that a folder scan must not take for records
_METADATA = {"ptbxl_database.csv", "scp_statements.csv", "predictions.csv", "report.csv", "per_class.csv"}
_RECORD_SUFFIXES = (".hea", *DICOM_SUFFIXES, *ARRAY_SUFFIXES)


def _record_path(path: Path) -> Path | None:
    """The path that identifies a record (the .hea for WFDB), or None when ``path`` is not a record."""
    suffix = path.suffix.lower()
    if suffix == ".dat":
        return path.with_suffix(".hea")
    if suffix in _RECORD_SUFFIXES:
        return None if path.name.lower() in _METADATA else path
    if suffix == "" and path.with_suffix(".hea").is_file():
        return path.with_suffix(".hea")
    return None


class EcgTask(Task):
    """ProtoECGNet: 71 PTB-XL statements from a 12-lead ECG, explained by prototypes."""

    name = "ecg"
    title = "ProtoECGNet: 12-lead ECG, 71 PTB-XL statements with prototype explanations"
    data_card = "ptbxl.md"
    default_model = MODEL_NAME
    options_model = EcgOptions
    train_options_model = EcgTrainOptions
    config_class = EcgConfig

    run_class = EcgRun

    @property
    def contract(self) -> InputContract:
        return InputContract(
            description=f"one 12-lead resting ECG, 10 s (8 s minimum), {MIN_FS:g} Hz to {MAX_FS:g} Hz "
            f"(>= {SAMPLING_RATE:g} Hz recommended)",
            kind="signal",
            channels=LEADS,
            formats=(
                "WFDB (.hea/.dat)",
                "DICOM 12-lead ECG waveform (.dcm)",
                "CSV (needs the sampling_rate option)",
                "NPY (needs the sampling_rate option)",
            ),
            heads=(OutputHead("statements", PTBXL_LABELS, "sigmoid"),),
            notes=f"Leads mapped by code (DICOM SCP-ECG/MDC) or name (any order; WFDB names such as MLII, D1-D3; "
            "CSV without header and NPY in the order above); DICOM: the rhythm multiplex group; units converted to "
            "mV (CSV/NPY in mV unless signal_unit says uV or V; a file without units is read as mV, with a warning); "
            f"the rate must convert exactly to the model's {SAMPLING_RATE:g} Hz; at most the central "
            f"{MAX_READ_SECONDS:g} s are read (CSV: the first {MAX_READ_SECONDS:g} s); longer records: central 10 s; "
            "8-10 s: zero-padded; a missing lead, NaN, amplitudes beyond an ECG in mV (uV labelled mV), a flat lead "
            "or < 8 s is an error. As a tensor (Open Inference Protocol): (12, samples) in the lead order above, in "
            "mV unless signal_unit says otherwise, with its sampling_rate; read and preprocessed as an NPY record.",
            tensor=TensorSpec(
                name="signal",
                datatypes=("FP32", "FP64"),
                shape=(len(LEADS), -1),
                parameters={
                    "layout": "leads x samples",
                    "leads": ",".join(LEADS),
                    "unit": "mV",
                    "sampling_rate": f"required, {MIN_FS:g}-{MAX_FS:g} Hz",
                },
                required_options=("sampling_rate",),
            ),
        )

    def generate(self, out_dir: Path, n: int, seed: int, dicom: bool, variant: str | None) -> tuple[Path, dict]:
        from pipelines.ecg.synthetic import write_synthetic_ptbxl

        if variant not in (None, "ptbxl"):
            raise ValueError(f"unknown ecg variant {variant!r}; only ptbxl")
        return write_synthetic_ptbxl(out_dir, n, seed=seed, dicom=dicom), {"layout": "PTB-XL 1.0.3"}

    def evaluate(self, data_dir: Path, checkpoint: Checkpoint, out_dir: Path, options: PredictOptions) -> dict:
        from pipelines.ecg.evaluate import evaluate

        return evaluate(data_dir, checkpoint, out_dir, options)

    def collect_inputs(self, inputs: Sequence[str]) -> Collected:
        paths: list[Path] = []
        out = Collected()
        for p in expand_paths(inputs):
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    rec = _record_path(f) if f.is_file() else None
                    if rec is not None:
                        paths.append(rec)
            elif p.exists():
                paths.append(_record_path(p) or p)
            elif p.with_suffix(".hea").is_file():  # a WFDB record given without suffix
                paths.append(p.with_suffix(".hea"))
            else:
                out.errors.append(InputError(p, "does not exist"))
        seen: set[Path] = set()
        names: set[str] = set()
        for path in paths:
            if path in seen:
                continue
            seen.add(path)
            name = path.stem if path.suffix else path.name
            base, k = name, 1
            while name in names:
                k += 1
                name = f"{base}_{k}"
            names.add(name)
            out.items.append(InputItem(name=name, paths={"record": path}))
        return out

    def load_predictor(self, checkpoint: Checkpoint, options: PredictOptions) -> Predictor:
        from pipelines.ecg.infer import EcgPredictor

        return EcgPredictor(checkpoint, options)

    def demo_synth_n(self) -> int:
        return 300

    def demo_inputs(self, data_dir: Path) -> list[str]:
        """Two records of the test fold as WFDB, and a held-out record as a DICOM 12-lead waveform."""
        from pipelines.ecg.datasets import read_database

        df = read_database(data_dir)
        test = df[df["strat_fold"] == 10].head(2)
        wfdb = [str(Path(data_dir) / f"{f}.hea") for f in test["filename_lr"]]
        dicom = [
            p for p in self.example_inputs(Path(data_dir).parent / "ecg_heldout", 2, seed=1000) if p.endswith(".dcm")
        ]
        return wfdb + dicom

    def example_inputs(self, root: Path, n: int, seed: int) -> list[str]:
        """WFDB records at 100 Hz, and DICOM waveforms at 500 Hz when ``n`` > 1 (alternating)."""
        data = self.synth(root, n=n, seed=seed, dicom=n > 1)
        wfdb = sorted((data / "records100").rglob("*.hea"))
        dicom = sorted((data / "dicom").glob("*.dcm")) if n > 1 else []
        return [str(wfdb[i] if i % 2 == 0 or not dicom else dicom[i]) for i in range(n)]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["branches"] = {name: list(labels) for name, labels in BRANCH_LABELS.items()}
        return info


register_task(EcgTask())
