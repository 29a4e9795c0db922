"""Plain torch: the networks, reconstruction features, mixture maths and losses of DAGMM.

Everything here runs on any device and exports (``torch.onnx``); nothing here
imports the fast paths of :mod:`dagmm.accel`, the trainer or the detectors.
"""
