"""The Filter saliency page's record: its navigation entry and subset origin."""

from core.methods.records import MethodRecord

RECORD = MethodRecord(name="saliency", title="Filter saliency", page="pages/saliency.py", icon=":material/tune:", origin='saliency')
