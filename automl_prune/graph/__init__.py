"""The structure of a network: its layers and the channel groups that must be pruned together."""
