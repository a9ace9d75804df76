"""App layer of the PARL Lab dashboard: Streamlit caching, the shared sidebar, URL state,
the background training-job manager and the figure/table helpers (captions, provenance,
downloads). Science lives in parl_core; this package only wires it to widgets."""
