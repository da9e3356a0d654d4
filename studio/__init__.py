"""The studio: every stage of the pipeline in a local Gradio app (`assistant studio`); training runs as a subprocess."""
