"""Use a trained model: one inference engine shared by chat, prediction, the API and the web UI."""
