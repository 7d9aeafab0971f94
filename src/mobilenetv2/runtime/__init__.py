"""Where inference runs: the backend table and the only place that creates backend sessions
(`backends`), this CPU's facts (`cpu`), what our ONNX files say about themselves
(`onnx_meta`), and `InferenceSession` with its auto race (`session`)."""
