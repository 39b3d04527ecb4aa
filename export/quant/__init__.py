"""INT8 post-training quantisation for the Ascend 310 (`atlas-kd quantize`): AMCT's default scheme, the two models
it writes (the int8 CPU reference and the deploy model ATC converts), and the road through Huawei's AMCT itself.

    scheme.py       ARQ weights and IFMR activations (numpy), AMCT's documented default
    calibration.py  the calibration set (class-balanced, from the training split) and the activations it gives
    graph.py        the fp32 ONNX -> the fake-quant reference and the AscendQuant/AscendDequant deploy model
    stage.py        quantize(cfg, run) -> the derived run <run>/int8/ (quant.json), with --qat and --amct
    amct.py         the real road: run amct_onnx where it is importable, else prepare its folder
    amct_calibrate.py  the script run beside amct_onnx (Python 3.7, numpy + onnxruntime + amct_onnx)
"""
