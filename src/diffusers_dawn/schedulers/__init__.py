from .scheduling_dawn_ddim import DAWNDDIMScheduler, DAWNDDIMSchedulerOutput, dynamic_threshold


__all__ = ["DAWNDDIMScheduler", "DAWNDDIMSchedulerOutput", "dynamic_threshold"]
