"""SMART App Launch: scopes and discovery."""
