"""shared/text: report -> Findings abstraction (lexicon / optional LLM) and the text encoder.

`shared.text.encoder.TextEncoder` (torch + open_clip) is imported from its module on purpose,
so `from shared.text import abstract_report` stays light.
"""

from shared.text.lexicon import MAX_REPORT_BYTES, ReportError, abstract_report, abstract_reports
from shared.text.llm import Abstractor, LLMAbstractor, get_abstractor

__all__ = ["MAX_REPORT_BYTES", "Abstractor", "LLMAbstractor", "ReportError", "abstract_report",
           "abstract_reports", "get_abstractor"]
