"""The miniature world: a seeded synthetic multimodal world small enough to train NExT-GPT on a CPU."""
