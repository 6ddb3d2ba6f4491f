"""The media generation studio: a prompt becomes a narrated video through the text, audio and vision services."""
