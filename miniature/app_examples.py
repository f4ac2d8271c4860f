"""Examples for the app when it serves the miniature model: requests in the world's own words
(what this model knows), an edit of an attached medium, and a media-in question."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from . import spec
from .evaluate_edits import DEMO_PROMPT


def examples(folder=None) -> list[dict]:
    """Gradio MultimodalTextbox values ({"text", "files"}); the attached media are rendered into
    ``folder`` (default: a folder under the system temp dir)."""
    from anyany.media import write_audio, write_image

    folder = Path(folder or Path(tempfile.gettempdir()) / "anyany_miniature_examples")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = write_image(spec.render_image(spec.ImageItem("green", "circle", "left"), rng), folder / "green_circle.png",
                        overwrite=True)
    sound = write_audio(spec.render_audio(spec.AudioItem("high", "quiet", "pulsing"), rng), spec.SAMPLE_RATE,
                        folder / "high_tone.wav", overwrite=True)
    return [
        {"text": DEMO_PROMPT, "files": []},
        {"text": "make a video of a yellow triangle moving up", "files": []},
        {"text": "Make this red.", "files": [str(image)]},
        {"text": "Animate this, moving down.", "files": [str(image)]},
        {"text": "What do you hear?", "files": [str(sound)]},
        {"text": "The same tone but loud.", "files": [str(sound)]},
    ]
