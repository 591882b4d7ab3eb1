"""The industry protocol doors."""
