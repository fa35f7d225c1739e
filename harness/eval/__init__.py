"""Evaluation: one module per protocol (`qvhighlights`: the official QVHighlights rules;
`top1`: Charades-STA / ActivityNet-Captions), the protocol registry (`protocols`), the
shared window arithmetic (`windows`) and prediction files (`predictions`). Importing this
package registers every protocol."""

from harness.core.registries import PROTOCOLS
from harness.eval import qvhighlights, top1
from harness.eval.protocols import Protocol, all_metric_keys, brief, evaluate, protocol_of

__all__ = ["PROTOCOLS", "Protocol", "all_metric_keys", "brief", "evaluate", "protocol_of",
           "qvhighlights", "top1"]
