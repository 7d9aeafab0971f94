"""Where inference runs: the backend sessions and `InferenceSession`."""
