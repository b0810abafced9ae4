"""An ordinary Hugging Face model and data for train.loop: hf_trainer (search_spaces/examples/sentiment_hf_lora.yaml)."""
