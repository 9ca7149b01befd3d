"""Networks: the encoder, the M decoders as one batched module (and its fused CPU form), EWC, the prior
checkpoint, the device and how a network call is chunked."""
