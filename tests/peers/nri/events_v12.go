//go:build nri_v12

// Event calls for NRI v0.12+: every event has a dedicated request type and RPC; the runtime
// falls back to Plugin/StateChange only when the plugin answers Unimplemented.
package main

import (
	"context"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
)

func runPodSandbox(ctx context.Context, a *adaptation.Adaptation, pod *api.PodSandbox) error {
	return a.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: pod})
}

func startContainer(ctx context.Context, a *adaptation.Adaptation, pod *api.PodSandbox, c *api.Container) error {
	return a.StartContainer(ctx, &api.StartContainerRequest{Pod: pod, Container: c})
}

func removeContainer(ctx context.Context, a *adaptation.Adaptation, pod *api.PodSandbox, c *api.Container) error {
	return a.RemoveContainer(ctx, &api.RemoveContainerRequest{Pod: pod, Container: c})
}
