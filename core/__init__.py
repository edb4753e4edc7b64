"""BiasLens core: everything except the Streamlit pages (only core/ui imports Streamlit)."""
