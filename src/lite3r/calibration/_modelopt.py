"""ModelOpt's quantization package, imported so that the import cannot keep a model alive.

Importing ``modelopt.torch.quantization`` runs optional-dependency probes (pulp's solver checks) that keep
their ``ImportError`` with its traceback in a class attribute; a traceback pins every frame that was on the
stack during the import, with their locals. Imported first inside ``calibrate_fp8(model, ...)``, that pinned
the model being calibrated (4.7 GiB of GPU memory that ``lite3r bench`` found still allocated after the
student was deleted). The first import therefore runs on a fresh thread, whose stack holds nothing of ours.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

_MODULE = "modelopt.torch.quantization"


def modelopt_quantization() -> ModuleType:
    """``modelopt.torch.quantization`` (``mtq``); raises ``ImportError`` when ModelOpt is not installed."""
    if _MODULE not in sys.modules:
        thread = threading.Thread(target=_import_quietly, name="lite3r-import-modelopt")
        thread.start()
        thread.join()
    return importlib.import_module(_MODULE)  # a failed import above fails here, on the caller's stack


def _import_quietly() -> None:
    try:
        importlib.import_module(_MODULE)
    except ImportError:
        pass
