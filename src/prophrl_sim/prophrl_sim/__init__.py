"""Physics-simulated Franka Panda / UR5e arms (robosuite on MuJoCo) exposing the real drivers' topics."""
