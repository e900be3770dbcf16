"""Using and shipping trained runs: classify and evaluate, fp16 and ONNX exports, importing weights."""
