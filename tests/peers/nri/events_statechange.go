//go:build !nri_v12

// Event calls for NRI v0.3 – v0.11: pod and "notification" container events are
// StateChangeEvents on the adaptation API and travel as Plugin/StateChange on the wire.
package main

import (
	"context"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
)

func runPodSandbox(ctx context.Context, a *adaptation.Adaptation, pod *api.PodSandbox) error {
	return a.RunPodSandbox(ctx, &api.StateChangeEvent{Pod: pod})
}

func startContainer(ctx context.Context, a *adaptation.Adaptation, pod *api.PodSandbox, c *api.Container) error {
	return a.StartContainer(ctx, &api.StateChangeEvent{Pod: pod, Container: c})
}

func removeContainer(ctx context.Context, a *adaptation.Adaptation, pod *api.PodSandbox, c *api.Container) error {
	return a.RemoveContainer(ctx, &api.StateChangeEvent{Pod: pod, Container: c})
}
