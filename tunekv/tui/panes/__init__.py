"""One module per screen of the app: Hardware, Plan, Search, Compare, Export."""
