"""anyany: NExT-GPT-style any-to-any generation (see README.md for the map of the packages)."""
import warnings

# peft (0.21) reads ``model.is_gradient_checkpointing`` whenever it wraps a model, which transformers 5
# deprecates with a FutureWarning on every LoRA load: noise to our users, nothing they can act on.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
