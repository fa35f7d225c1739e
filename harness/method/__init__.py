"""The method on cached outputs: reading a run's inputs (`sources`), Eq. 1 frame scores
(`scoring`), the MPG, Eq. 2 and NMS (`proposals`), and recipes that chain them (`recipes`)."""
