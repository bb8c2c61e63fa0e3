// Command nripeer is dracpu's NRI runtime test peer: it embeds the real runtime side of NRI
// (github.com/containerd/nri/pkg/adaptation) and is driven by a Python test over stdin/stdout.
//
// Protocol: one JSON object per line on stdin, {"seq": N, "op": "...", ...}. Each command gets
// exactly one reply line {"reply": N, "ok": true, "result": ...} or {"reply": N, "ok": false,
// "error": "..."}. Asynchronous events are lines {"ev": "...", ...}: "log" (every NRI library
// log line), "synced" (a plugin's Synchronize result) and "update-containers" (an unsolicited
// UpdateContainers call from a plugin). Protobuf messages are rendered with protojson using
// proto field names, so the Python side sees snake_case keys.
//
// The peer owns the fake node state (pods and containers); it survives a stop/start of the
// adaptation, like containers survive a runtime restart. A "runtime restart" in the tests is a
// kill of this process followed by a new one on the same socket path.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/log"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// nriVersion is the NRI module version this binary was built against (set with -ldflags -X).
var nriVersion = "unknown"

var (
	outMu sync.Mutex
	out   = bufio.NewWriter(os.Stdout)
	pj    = protojson.MarshalOptions{UseProtoNames: true}
)

// emit writes one JSON line to stdout, atomically with respect to other goroutines.
func emit(v map[string]any) {
	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(fmt.Sprintf(`{"ev":"log","level":"error","msg":%q}`, err.Error()))
	}
	outMu.Lock()
	defer outMu.Unlock()
	out.Write(b)
	out.WriteByte('\n')
	out.Flush()
}

// pjson renders a protobuf message as a JSON value (a raw message, so it nests in emit).
func pjson(m proto.Message) json.RawMessage {
	b, err := pj.Marshal(m)
	if err != nil {
		return json.RawMessage(fmt.Sprintf("%q", err.Error()))
	}
	if len(b) == 0 {
		return json.RawMessage("{}")
	}
	return json.RawMessage(b)
}

func pjsonList[T proto.Message](ms []T) []json.RawMessage {
	res := make([]json.RawMessage, 0, len(ms))
	for _, m := range ms {
		res = append(res, pjson(m))
	}
	return res
}

// lineLogger forwards the NRI library's log lines as "log" events.
type lineLogger struct{}

func (lineLogger) logf(level, format string, args ...any) {
	emit(map[string]any{"ev": "log", "level": level, "msg": fmt.Sprintf(format, args...)})
}
func (l lineLogger) Debugf(_ context.Context, f string, a ...any) { l.logf("debug", f, a...) }
func (l lineLogger) Infof(_ context.Context, f string, a ...any)  { l.logf("info", f, a...) }
func (l lineLogger) Warnf(_ context.Context, f string, a ...any)  { l.logf("warn", f, a...) }
func (l lineLogger) Errorf(_ context.Context, f string, a ...any) { l.logf("error", f, a...) }

// node is the fake runtime state handed to plugins on Synchronize.
type node struct {
	mu         sync.Mutex
	pods       map[string]*api.PodSandbox
	containers map[string]*api.Container
}

func (n *node) snapshot() ([]*api.PodSandbox, []*api.Container) {
	n.mu.Lock()
	defer n.mu.Unlock()
	pods := make([]*api.PodSandbox, 0, len(n.pods))
	for _, p := range n.pods {
		pods = append(pods, p)
	}
	ctrs := make([]*api.Container, 0, len(n.containers))
	for _, c := range n.containers {
		ctrs = append(ctrs, c)
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Id < pods[j].Id })
	sort.Slice(ctrs, func(i, j int) bool { return ctrs[i].Id < ctrs[j].Id })
	return pods, ctrs
}

func (n *node) pod(id string) (*api.PodSandbox, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	p, ok := n.pods[id]
	if !ok {
		return nil, fmt.Errorf("no pod %q", id)
	}
	return p, nil
}

func (n *node) container(id string) (*api.PodSandbox, *api.Container, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.containers[id]
	if !ok {
		return nil, nil, fmt.Errorf("no container %q", id)
	}
	return n.pods[c.PodSandboxId], c, nil
}

// apply records the CPU and memory sets of updates on the containers they name, as a runtime
// does, so a later Synchronize (a plugin reconnecting) reports what the containers run on.
func (n *node) apply(updates []*api.ContainerUpdate) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, u := range updates {
		if u == nil {
			continue
		}
		if c, ok := n.containers[u.ContainerId]; ok {
			setCpu(c, u.GetLinux().GetResources().GetCpu())
		}
	}
}

// setCpu copies the non-empty cpus and mems of cpu onto the container's resources.
func setCpu(c *api.Container, cpu *api.LinuxCPU) {
	if cpu == nil || c.Linux == nil || c.Linux.Resources == nil || c.Linux.Resources.Cpu == nil {
		return
	}
	if cpu.Cpus != "" {
		c.Linux.Resources.Cpu.Cpus = cpu.Cpus
	}
	if cpu.Mems != "" {
		c.Linux.Resources.Cpu.Mems = cpu.Mems
	}
}

// listContainers is the "containers" op: every container with its state and current sets.
func (n *node) listContainers() []map[string]any {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]map[string]any, 0, len(n.containers))
	for _, c := range n.containers {
		cpu := c.Linux.Resources.Cpu
		out = append(out, map[string]any{"id": c.Id, "pod": c.PodSandboxId, "name": c.Name,
			"env": c.Env, "state": c.State.String(), "cpus": cpu.Cpus, "mems": cpu.Mems})
	}
	sort.Slice(out, func(i, j int) bool { return out[i]["id"].(string) < out[j]["id"].(string) })
	return out
}

// command is one stdin line.
type command struct {
	Seq  int64  `json:"seq"`
	Op   string `json:"op"`
	Path string `json:"socket"`

	RequestTimeoutMs      int64 `json:"request_timeout_ms"`
	RegistrationTimeoutMs int64 `json:"registration_timeout_ms"`

	Pod         string            `json:"pod"`
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Env         []string          `json:"env"`
	Annotations map[string]string `json:"annotations"`
	Cpus        string            `json:"cpus"`
	Mems        string            `json:"mems"`

	Count           int `json:"count"`
	AnnotationBytes int `json:"annotation_bytes"`
	N               int `json:"n"`
}

type peer struct {
	node  node
	adapt *adaptation.Adaptation
}

func (p *peer) syncFn(ctx context.Context, cb adaptation.SyncCB) error {
	pods, ctrs := p.node.snapshot()
	updates, err := cb(ctx, pods, ctrs)
	if err != nil {
		emit(map[string]any{"ev": "sync-failed", "error": err.Error()})
		return err
	}
	p.node.apply(updates)
	emit(map[string]any{"ev": "synced", "pods": len(pods), "containers": len(ctrs),
		"updates": pjsonList(updates)})
	return nil
}

func (p *peer) updateFn(_ context.Context, updates []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) {
	var failed []*api.ContainerUpdate
	for _, u := range updates {
		if strings.HasPrefix(u.ContainerId, "fail") && !u.IgnoreFailure {
			failed = append(failed, u)
		}
	}
	applied := make([]*api.ContainerUpdate, 0, len(updates))
	for _, u := range updates {
		if !strings.HasPrefix(u.ContainerId, "fail") || u.IgnoreFailure {
			applied = append(applied, u)
		}
	}
	p.node.apply(applied)
	emit(map[string]any{"ev": "update-containers", "updates": pjsonList(updates),
		"failed": len(failed)})
	if len(failed) > 0 {
		return failed, errors.New("NRI update of some containers failed")
	}
	return nil, nil
}

func (p *peer) start(c *command) (any, error) {
	if p.adapt != nil {
		return nil, errors.New("already started")
	}
	if c.RequestTimeoutMs > 0 {
		adaptation.SetPluginRequestTimeout(time.Duration(c.RequestTimeoutMs) * time.Millisecond)
	}
	if c.RegistrationTimeoutMs > 0 {
		adaptation.SetPluginRegistrationTimeout(
			time.Duration(c.RegistrationTimeoutMs) * time.Millisecond)
	}
	dir, err := os.MkdirTemp("", "nripeer-plugins-")
	if err != nil {
		return nil, err
	}
	a, err := adaptation.New("containerd", "v2.99.0-nripeer", p.syncFn, p.updateFn,
		adaptation.WithSocketPath(c.Path),
		adaptation.WithPluginPath(dir),
		adaptation.WithPluginConfigPath(dir))
	if err != nil {
		return nil, err
	}
	if err := a.Start(); err != nil {
		return nil, err
	}
	p.adapt = a
	return map[string]any{"nri_version": nriVersion}, nil
}

func newPod(id string) *api.PodSandbox {
	return &api.PodSandbox{
		Id: id, Name: "pod-" + id, Uid: "uid-" + id, Namespace: "default",
		Linux: &api.LinuxPodSandbox{CgroupParent: "/kubepods/pod" + id},
	}
}

func newContainer(c *command) *api.Container {
	ctr := &api.Container{
		Id: c.ID, PodSandboxId: c.Pod, Name: c.Name, State: api.ContainerState_CONTAINER_CREATED,
		Env: c.Env, Annotations: c.Annotations,
		Linux: &api.LinuxContainer{
			CgroupsPath: "/kubepods/pod" + c.Pod + "/" + c.ID,
			Resources: &api.LinuxResources{
				Cpu: &api.LinuxCPU{Cpus: c.Cpus, Mems: c.Mems},
			},
		},
	}
	if ctr.Name == "" {
		ctr.Name = "ctr-" + c.ID
	}
	return ctr
}

func (p *peer) populate(c *command) (any, error) {
	n := &p.node
	n.mu.Lock()
	defer n.mu.Unlock()
	pad := strings.Repeat("x", c.AnnotationBytes)
	for i := 0; i < c.Count; i++ {
		pid := fmt.Sprintf("bulkpod-%04d", i%64)
		if _, ok := n.pods[pid]; !ok {
			n.pods[pid] = newPod(pid)
		}
		cc := &command{Pod: pid, ID: fmt.Sprintf("bulk-%06d", i),
			Annotations: map[string]string{"pad": pad}}
		ctr := newContainer(cc)
		ctr.State = api.ContainerState_CONTAINER_RUNNING
		n.containers[ctr.Id] = ctr
	}
	return map[string]any{"pods": len(n.pods), "containers": len(n.containers)}, nil
}

func (p *peer) needAdapt() error {
	if p.adapt == nil {
		return errors.New("adaptation not started")
	}
	return nil
}

func (p *peer) dispatch(c *command) (any, error) {
	ctx := context.Background()
	switch c.Op {
	case "start":
		return p.start(c)
	case "populate":
		return p.populate(c)
	case "add-pod":
		p.node.mu.Lock()
		p.node.pods[c.Pod] = newPod(c.Pod)
		p.node.mu.Unlock()
		return map[string]any{}, nil
	case "containers":
		return p.node.listContainers(), nil
	case "add-container":
		// A running container the runtime already has (one that outlived a runtime restart):
		// recorded without telling any plugin; a plugin sees it at its next Synchronize.
		if _, err := p.node.pod(c.Pod); err != nil {
			return nil, err
		}
		ctr := newContainer(c)
		ctr.State = api.ContainerState_CONTAINER_RUNNING
		p.node.mu.Lock()
		p.node.containers[ctr.Id] = ctr
		p.node.mu.Unlock()
		return map[string]any{}, nil
	}
	if err := p.needAdapt(); err != nil {
		return nil, err
	}
	switch c.Op {
	case "run-pod":
		pod := newPod(c.Pod)
		p.node.mu.Lock()
		p.node.pods[c.Pod] = pod
		p.node.mu.Unlock()
		return map[string]any{}, runPodSandbox(ctx, p.adapt, pod)
	case "create":
		pod, err := p.node.pod(c.Pod)
		if err != nil {
			return nil, err
		}
		ctr := newContainer(c)
		rsp, err := p.adapt.CreateContainer(ctx, &api.CreateContainerRequest{Pod: pod, Container: ctr})
		if err != nil {
			return nil, err
		}
		setCpu(ctr, rsp.GetAdjust().GetLinux().GetResources().GetCpu())
		p.node.mu.Lock()
		p.node.containers[ctr.Id] = ctr
		p.node.mu.Unlock()
		p.node.apply(rsp.GetUpdate())
		return pjson(rsp), nil
	case "start-container":
		pod, ctr, err := p.node.container(c.ID)
		if err != nil {
			return nil, err
		}
		ctr.State = api.ContainerState_CONTAINER_RUNNING
		return map[string]any{}, startContainer(ctx, p.adapt, pod, ctr)
	case "update":
		pod, ctr, err := p.node.container(c.ID)
		if err != nil {
			return nil, err
		}
		rsp, err := p.adapt.UpdateContainer(ctx, &api.UpdateContainerRequest{
			Pod: pod, Container: ctr,
			LinuxResources: &api.LinuxResources{Cpu: &api.LinuxCPU{Cpus: c.Cpus, Mems: c.Mems}},
		})
		if err != nil {
			return nil, err
		}
		setCpu(ctr, &api.LinuxCPU{Cpus: c.Cpus, Mems: c.Mems})
		p.node.apply(rsp.GetUpdate())
		return pjson(rsp), nil
	case "stop-container":
		pod, ctr, err := p.node.container(c.ID)
		if err != nil {
			return nil, err
		}
		ctr.State = api.ContainerState_CONTAINER_STOPPED
		rsp, err := p.adapt.StopContainer(ctx, &api.StopContainerRequest{Pod: pod, Container: ctr})
		if err != nil {
			return nil, err
		}
		return pjson(rsp), nil
	case "remove-container":
		pod, ctr, err := p.node.container(c.ID)
		if err != nil {
			return nil, err
		}
		p.node.mu.Lock()
		delete(p.node.containers, c.ID)
		p.node.mu.Unlock()
		return map[string]any{}, removeContainer(ctx, p.adapt, pod, ctr)
	case "bench-create":
		return p.benchCreate(ctx, c)
	}
	return nil, fmt.Errorf("unknown op %q", c.Op)
}

// benchCreate times c.N sequential CreateContainer round trips through every connected plugin.
// The containers are not added to the node state.
func (p *peer) benchCreate(ctx context.Context, c *command) (any, error) {
	pod, err := p.node.pod(c.Pod)
	if err != nil {
		return nil, err
	}
	durations := make([]int64, 0, c.N)
	for i := 0; i < c.N; i++ {
		cc := *c
		cc.ID = fmt.Sprintf("bench-%06d", i)
		ctr := newContainer(&cc)
		start := time.Now()
		_, err := p.adapt.CreateContainer(ctx, &api.CreateContainerRequest{Pod: pod, Container: ctr})
		durations = append(durations, time.Since(start).Nanoseconds())
		if err != nil {
			return nil, fmt.Errorf("round trip %d: %w", i, err)
		}
	}
	return map[string]any{"durations_ns": durations}, nil
}

func main() {
	log.Set(lineLogger{})
	p := &peer{node: node{pods: map[string]*api.PodSandbox{}, containers: map[string]*api.Container{}}}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	for in.Scan() {
		var c command
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			emit(map[string]any{"reply": -1, "ok": false, "error": "bad command: " + err.Error()})
			continue
		}
		if c.Op == "exit" {
			emit(map[string]any{"reply": c.Seq, "ok": true, "result": map[string]any{}})
			os.Exit(0)
		}
		res, err := p.dispatch(&c)
		if err != nil {
			emit(map[string]any{"reply": c.Seq, "ok": false, "error": err.Error()})
		} else {
			emit(map[string]any{"reply": c.Seq, "ok": true, "result": res})
		}
	}
	// stdin closed: the test is gone, so is the runtime.
	os.Exit(0)
}
