"""The Intersectional page's record: its navigation entry."""

from core.methods.records import MethodRecord

RECORD = MethodRecord(name="intersectional", title="Intersectional", page="pages/intersectional.py", icon=":material/category:", origin=None)
