"""Command-line front ends. Thin: parsing and messages here, logic in the layers below."""
