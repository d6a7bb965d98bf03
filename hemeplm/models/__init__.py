"""Neural networks: atom encoder, video denoiser, the composed HemePLM model."""
