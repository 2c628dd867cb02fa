"""From what the user has to the IR: ``shmrt.load`` (load.py) dispatches on
paths, URLs and objects to the ONNX, torch and scikit-learn converters.
Frontends emit ``shmrt.ir`` layers and never reach past them."""
