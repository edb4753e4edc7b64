"""The only Streamlit-aware part of core: cached loaders, page context, image grids, charts."""
