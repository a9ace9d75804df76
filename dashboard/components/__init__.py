"""Custom Streamlit components of the dashboard (st.components.v2: inline JS, no iframe)."""
