"""BiasLens entry point: page config, navigation over pages/, the sidebar workspace picker."""

import sys

import streamlit as st

st.set_page_config(page_title="BiasLens", page_icon=":material/center_focus_strong:", layout="wide")
# The first open in a fresh process imports torch and the methods (about 10 s): say so at
# once instead of leaving the page blank.
_loading = st.empty()
if "core.ui.context" not in sys.modules:
    _loading.info(":material/hourglass_top: Starting BiasLens: loading the model libraries (about 10 s the first time)...")

from core.methods.records import method_records  # noqa: E402
from core.services.server import freeze_imports, start_stats_writer  # noqa: E402
from core.ui import visitor, workshop  # noqa: E402  (heavy: after the loading message)
from core.ui.context import ignore_clear_cache_when_hosted, sidebar_picker, workspace_list  # noqa: E402

_loading.empty()

# The Overview, the Findings, Compare and Cohorts, then one page per method, from the methods' records.
PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/findings.py", title="Findings", icon=":material/format_list_numbered:"),
    st.Page("pages/compare.py", title="Compare models", icon=":material/compare_arrows:"),
    st.Page("pages/cohorts.py", title="Cohorts & subsets", icon=":material/filter_alt:"),
    *[st.Page(record.page, title=record.title, icon=record.icon) for record in method_records()],
]

# Workshop mode (core/ui/workshop.py) adds the "Check my finding" page and the sidebar's steps.
WORKSHOP_PAGE = st.Page(workshop.PAGE_PATH, title="Workshop: check my finding", icon=":material/school:")
listing = workspace_list()
ignore_clear_cache_when_hosted()
start_stats_writer()  # only with $BIASLENS_STATS_FILE (bench/load.py)
freeze_imports()  # the libraries never need collecting: full collections stay short under load
if listing.hosted or listing.passphrase or workshop.workshop_on(listing):
    visitor.visitor_key()  # keeps ?v= in the URL, so a reload finds this visitor's work again
pages = PAGES + ([WORKSHOP_PAGE] if workshop.workshop_on(listing) else [])
# Streamlit's own sidebar menu is off (.streamlit/config.toml: showSidebarNavigation): before
# this script first runs it would list the files of pages/ by their raw names for the ~10 s
# of the first import. The menu is drawn here instead, with the pages' titles.
navigation = st.navigation(pages, position="hidden")
st.sidebar.title(":material/center_focus_strong: BiasLens")
st.sidebar.caption("Where does the classifier fail, and why?")
for entry in pages:
    st.sidebar.page_link(entry)
sidebar_picker()
navigation.run()
