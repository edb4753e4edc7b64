"""The ActiVis page's record: its navigation entry and subset origin."""

from core.methods.records import MethodRecord

RECORD = MethodRecord(name="activis", title="ActiVis", page="pages/activis.py", icon=":material/hub:", origin='activis')
