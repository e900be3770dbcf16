"""Using and shipping trained runs: classify and evaluate, fp16, ONNX and Hugging Face Hub exports, importing
weights."""
