"""Export a model to another runtime's format: ``onnx_genai.export_onnx`` (ONNX Runtime GenAI)."""
