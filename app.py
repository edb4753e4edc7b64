"""BiasLens entry point: page config, navigation over pages/, the sidebar workspace picker."""

import streamlit as st

from core.ui.context import sidebar_picker

st.set_page_config(page_title="BiasLens", page_icon=":material/center_focus_strong:", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/cohorts.py", title="Cohorts & subsets", icon=":material/filter_alt:"),
    st.Page("pages/spotlight.py", title="Spotlight", icon=":material/highlight:"),
    st.Page("pages/subgroups.py", title="Subgroups", icon=":material/groups:"),
]

navigation = st.navigation(PAGES)
st.sidebar.title(":material/center_focus_strong: BiasLens")
st.sidebar.caption("Where does the classifier fail, and why?")
sidebar_picker()
navigation.run()
