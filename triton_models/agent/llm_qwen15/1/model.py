"""The chat LLM (agent/llm) on Qwen2.5-Coder-1.5B-Instruct weights: the same model code.

A second Triton model rather than a switch, so both can be loaded side by side
(the quality/speed comparison, a session routed to either with RTMEDIA_LLM_MODEL).
"""

import importlib.util
from pathlib import Path

# agent/llm/1/model.py sits next to this model in the rendered repository
_SRC = Path(__file__).resolve().parents[2] / "llm" / "1" / "model.py"
_spec = importlib.util.spec_from_file_location("rtmedia_llm_model", _SRC)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)


class TritonPythonModel(_module.TritonPythonModel):
    pass
