"""The inference layer: turning a trained model into text."""
