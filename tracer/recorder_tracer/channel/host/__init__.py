"""The host's end of the channel: `recorder collect`, each guest's folder,
its JSON lines, the guests' /metrics and the Chrome merge."""
