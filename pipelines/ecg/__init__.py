"""The ``ecg`` task: ProtoECGNet on PTB-XL with case-based explanations (see ``pipelines/ecg/task.py``)."""
