"""The 71 PTB-XL SCP-ECG statements: code → the statement's description in PTB-XL's ``scp_statements.csv``.

Torch-free (the options and the CLI read it before any model is loaded). The order is the model's output order,
``models.protoecgnet.PTBXL_LABELS`` (a test checks that they agree). Descriptions are as PTB-XL 1.0.3 gives them
(Wagner et al., Scientific Data 2020), lower case, so that a picture or a front end can say "non-specific ST
elevation" where the model says ``STE_``.
"""

from __future__ import annotations

__all__ = ["STATEMENTS", "statement_name"]

STATEMENTS: dict[str, str] = {
    "NDT": "non-diagnostic T abnormalities",
    "NST_": "non-specific ST changes",
    "DIG": "digitalis effect",
    "LNGQT": "long QT interval",
    "NORM": "normal ECG",
    "IMI": "inferior myocardial infarction",
    "ASMI": "anteroseptal myocardial infarction",
    "LVH": "left ventricular hypertrophy",
    "LAFB": "left anterior fascicular block",
    "ISC_": "non-specific ischemic",
    "IRBBB": "incomplete right bundle branch block",
    "1AVB": "first degree AV block",
    "IVCD": "non-specific intraventricular conduction disturbance (block)",
    "ISCAL": "ischemic in anterolateral leads",
    "CRBBB": "complete right bundle branch block",
    "CLBBB": "complete left bundle branch block",
    "ILMI": "inferolateral myocardial infarction",
    "LAO/LAE": "left atrial overload/enlargement",
    "AMI": "anterior myocardial infarction",
    "ALMI": "anterolateral myocardial infarction",
    "ISCIN": "ischemic in inferior leads",
    "INJAS": "subendocardial injury in anteroseptal leads",
    "LMI": "lateral myocardial infarction",
    "ISCIL": "ischemic in inferolateral leads",
    "LPFB": "left posterior fascicular block",
    "ISCAS": "ischemic in anteroseptal leads",
    "INJAL": "subendocardial injury in anterolateral leads",
    "ISCLA": "ischemic in lateral leads",
    "RVH": "right ventricular hypertrophy",
    "ANEUR": "ST-T changes compatible with ventricular aneurysm",
    "RAO/RAE": "right atrial overload/enlargement",
    "EL": "electrolytic disturbance or drug (former EDIS)",
    "WPW": "Wolff-Parkinson-White syndrome",
    "ILBBB": "incomplete left bundle branch block",
    "IPLMI": "inferoposterolateral myocardial infarction",
    "ISCAN": "ischemic in anterior leads",
    "IPMI": "inferoposterior myocardial infarction",
    "SEHYP": "septal hypertrophy",
    "INJIN": "subendocardial injury in inferior leads",
    "INJLA": "subendocardial injury in lateral leads",
    "PMI": "posterior myocardial infarction",
    "3AVB": "third degree AV block",
    "INJIL": "subendocardial injury in inferolateral leads",
    "2AVB": "second degree AV block",
    "ABQRS": "abnormal QRS",
    "PVC": "ventricular premature complex",
    "STD_": "non-specific ST depression",
    "VCLVH": "voltage criteria (QRS) for left ventricular hypertrophy",
    "QWAVE": "Q waves present",
    "LOWT": "low amplitude T-waves",
    "NT_": "non-specific T-wave changes",
    "PAC": "atrial premature complex",
    "LPR": "prolonged PR interval",
    "INVT": "inverted T-waves",
    "LVOLT": "low QRS voltages in the frontal and horizontal leads",
    "HVOLT": "high QRS voltage",
    "TAB_": "T-wave abnormality",
    "STE_": "non-specific ST elevation",
    "PRC(S)": "premature complex(es)",
    "SR": "sinus rhythm",
    "AFIB": "atrial fibrillation",
    "STACH": "sinus tachycardia",
    "SARRH": "sinus arrhythmia",
    "SBRAD": "sinus bradycardia",
    "PACE": "normal functioning artificial pacemaker",
    "SVARR": "supraventricular arrhythmia",
    "BIGU": "bigeminal pattern (unknown origin, supraventricular or ventricular)",
    "AFLT": "atrial flutter",
    "SVTAC": "supraventricular tachycardia",
    "PSVT": "paroxysmal supraventricular tachycardia",
    "TRIGU": "trigeminal pattern (unknown origin, supraventricular or ventricular)",
}


def statement_name(code: str) -> str:
    """The full name of a statement code (the code itself for a label this table does not know)."""
    return STATEMENTS.get(code, code)
