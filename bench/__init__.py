"""Speed of bcmb-jax against Hugging Face transformers: measurement, FLOP model, cases, reports, CLIs."""
