"""Video-to-text: sampled frames with timestamps + transcript in, streamed text out.

See common/vlm_model.py.
"""

import sys
from pathlib import Path

# The rendered model repository has common/ next to the use-case folders.
sys.path.insert(0, str(Path(__file__).resolve().parents[2].parent / "common"))
from vlm_model import VLMTritonModel


class TritonPythonModel(VLMTritonModel):
    pass
