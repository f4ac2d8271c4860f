"""The miniature world: a seeded synthetic multimodal world small enough to train NExT-GPT on a CPU."""


def examples(folder=None) -> list[dict]:
    """The app's examples for the miniature model (``miniature.app_examples.examples``)."""
    from .app_examples import examples as _examples

    return _examples(folder)
