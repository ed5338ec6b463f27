"""
The browser demo (`diffusers-dawn demo`): [`handlers`] holds the plain-Python side (input limits, one pipeline per
model, generation), [`app`] the Gradio page around it. Only `app` needs the `[demo]` extra (Gradio).
"""
