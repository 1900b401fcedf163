// pulumi-language-python is a minimal stand-in for the upstream Pulumi Python language host
// (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3), which the Go module proxy
// does not serve. See README.md for what it does and how it differs from upstream.
//
// The engine starts it as `pulumi-language-python [flags] <engine address>`; it serves the
// LanguageRuntime gRPC service on 127.0.0.1, prints the port on stdout and, for Run, spawns the
// `pulumi-language-python-exec` script installed next to this binary with the project's Python
// interpreter, passing the same flags and environment variables as upstream.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/logging"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

const (
	// The exec shim that runs the user's program, installed next to this binary.
	pythonExecName = "pulumi-language-python-exec"
	// The exec shim reads the config (a JSON object) and the secret config keys (a JSON list) from these.
	pulumiConfigVar           = "PULUMI_CONFIG"
	pulumiConfigSecretKeysVar = "PULUMI_CONFIG_SECRET_KEYS" //nolint:gosec
	// Exit code of the exec shim after it has already shown the user an actionable error.
	exitedAfterShowingUserActionableMessage = 32
	// Reported by GetPluginInfo when the build info does not name the sdk/v3 version.
	fallbackVersion = "v3.274.1"
)

// options are the command-line flags. The engine passes `[--logtostderr] [-v=N] [--tracing X]
// <engine address>`; older engines also passed -root/-virtualenv/-toolchain/-typechecker.
type options struct {
	tracing     string
	root        string
	virtualenv  string
	executor    string
	logToStderr bool
	verbose     int
	engine      string
}

// parseArgs accepts -flag, --flag, -flag=value and -flag value. Unknown flags are ignored rather
// than fatal; the engine address is the last positional argument (the engine always puts it last).
func parseArgs(argv []string) options {
	var o options
	var positional []string
	withValue := map[string]*string{
		"tracing": &o.tracing, "root": &o.root, "virtualenv": &o.virtualenv, "use-executor": &o.executor,
		"toolchain": nil, "typechecker": nil,
	}
	for i := 0; i < len(argv); i++ {
		arg := argv[i]
		if arg == "--" {
			positional = append(positional, argv[i+1:]...)
			break
		}
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			positional = append(positional, arg)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		switch name {
		case "logtostderr":
			o.logToStderr = !hasValue || value == "true" || value == "1"
		case "v":
			if !hasValue && i+1 < len(argv) {
				i++
				value = argv[i]
			}
			o.verbose, _ = strconv.Atoi(value)
		default:
			dest, known := withValue[name]
			if !known {
				continue // unknown flag: ignore it (and treat it as boolean)
			}
			if !hasValue && i+1 < len(argv) {
				i++
				value = argv[i]
			}
			if dest != nil {
				*dest = value
			}
		}
	}
	if len(positional) > 0 {
		o.engine = positional[len(positional)-1]
	}
	return o
}

func main() {
	opts := parseArgs(os.Args[1:])
	logging.InitLogging(opts.logToStderr, opts.verbose, false)

	pythonExec := opts.executor
	if pythonExec == "" {
		self, err := os.Executable()
		if err != nil {
			exit(fmt.Errorf("could not determine current executable: %w", err))
		}
		pythonExec = filepath.Join(filepath.Dir(self), pythonExecName)
		if _, err := os.Stat(pythonExec); err != nil {
			exit(fmt.Errorf("missing executor %s: %w", pythonExec, err))
		}
	}
	cwd, err := os.Getwd()
	if err != nil {
		exit(fmt.Errorf("getting the working directory: %w", err))
	}

	// Stop serving on SIGINT, or when the engine stops answering health checks.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	cancelChannel := make(chan bool)
	go func() {
		<-ctx.Done()
		cancel()
		close(cancelChannel)
	}()
	if opts.engine != "" {
		if err := rpcutil.Healthcheck(ctx, opts.engine, 5*time.Minute, cancel); err != nil {
			exit(fmt.Errorf("could not start health check host RPC server: %w", err))
		}
	}

	host := &pythonLanguageHost{
		exec:              pythonExec,
		engineAddress:     opts.engine,
		tracing:           opts.tracing,
		defaultRoot:       firstNonEmpty(opts.root, cwd),
		defaultVirtualenv: opts.virtualenv,
	}
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Cancel: cancelChannel,
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, host)
			return nil
		},
	})
	if err != nil {
		exit(fmt.Errorf("could not start language host RPC server: %w", err))
	}

	// Tell the engine where to reach us.
	fmt.Printf("%d\n", handle.Port)

	if err := <-handle.Done; err != nil {
		exit(fmt.Errorf("language host RPC stopped serving: %w", err))
	}
}

// pythonLanguageHost implements the parts of LanguageRuntimeServer that `pulumi up`, `preview`,
// `destroy`, `refresh` and `about` need; everything else answers Unimplemented.
type pythonLanguageHost struct {
	pulumirpc.UnimplementedLanguageRuntimeServer

	exec          string
	engineAddress string
	tracing       string
	// Used when a request carries no ProgramInfo (legacy engines): the -root / -virtualenv flags.
	defaultRoot       string
	defaultVirtualenv string
}

// exit reports a fatal startup error on stderr (which the engine shows) and exits non-zero.
func exit(err error) {
	fmt.Fprintf(os.Stderr, "error: %v\n", err)
	os.Exit(1)
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// pythonCommand returns a command running the project's Python interpreter: <venv>/bin/python
// (with the virtualenv activated in its environment) when runtime.options.virtualenv is set,
// relative to the project root; otherwise $PULUMI_PYTHON_CMD, python3 or python from PATH.
func (host *pythonLanguageHost) pythonCommand(ctx context.Context, info *pulumirpc.ProgramInfo,
	args ...string,
) (*exec.Cmd, error) {
	root, virtualenv := host.defaultRoot, host.defaultVirtualenv
	if info != nil {
		root = firstNonEmpty(info.GetRootDirectory(), root)
		if raw, ok := info.GetOptions().AsMap()["virtualenv"]; ok {
			s, isString := raw.(string)
			if !isString {
				return nil, errors.New("virtualenv option must be a string")
			}
			virtualenv = s
		}
	}
	if virtualenv == "" {
		candidates := []string{"python3", "python"}
		if c := os.Getenv("PULUMI_PYTHON_CMD"); c != "" {
			candidates = []string{c}
		}
		for _, c := range candidates {
			if path, err := exec.LookPath(c); err == nil {
				return exec.CommandContext(ctx, path, args...), nil
			}
		}
		return nil, fmt.Errorf("failed to locate any of %q on your PATH. Have you installed Python?", candidates)
	}

	venv := virtualenv
	if !filepath.IsAbs(venv) {
		venv = filepath.Join(root, venv)
	}
	python := filepath.Join(venv, "bin", "python")
	if st, err := os.Stat(python); err != nil || st.IsDir() {
		return nil, fmt.Errorf("The 'virtualenv' option in Pulumi.yaml is set to %q, but %q doesn't appear to be "+
			"a virtual environment (no %s); create it with `python3 -m venv %s` and install the "+
			"dependencies into it", virtualenv, venv, python, venv)
	}
	cmd := exec.CommandContext(ctx, python, args...)
	cmd.Env = activateVirtualEnv(os.Environ(), venv)
	return cmd, nil
}

// activateVirtualEnv prepends <venv>/bin to PATH, sets VIRTUAL_ENV and drops PYTHONHOME, like
// `source <venv>/bin/activate` (and upstream's toolchain.ActivateVirtualEnv).
func activateVirtualEnv(environ []string, venv string) []string {
	bin := filepath.Join(venv, "bin")
	result := make([]string, 0, len(environ)+2)
	hasPath := false
	for _, kv := range environ {
		key, value, _ := strings.Cut(kv, "=")
		switch key {
		case "PATH":
			hasPath = true
			result = append(result, "PATH="+bin+string(os.PathListSeparator)+value)
		case "PYTHONHOME", "VIRTUAL_ENV":
		default:
			result = append(result, kv)
		}
	}
	if !hasPath {
		result = append(result, "PATH="+bin)
	}
	return append(result, "VIRTUAL_ENV="+venv)
}

func (host *pythonLanguageHost) Handshake(ctx context.Context,
	req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	host.engineAddress = req.GetEngineAddress()
	if req.RootDirectory != nil && *req.RootDirectory != "" {
		host.defaultRoot = *req.RootDirectory
	}
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (host *pythonLanguageHost) GetPluginInfo(ctx context.Context, req *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	v := fallbackVersion
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == "github.com/pulumi/pulumi/sdk/v3" {
				v = dep.Version
			}
		}
	}
	return &pulumirpc.PluginInfo{Version: v}, nil
}

// GetRequiredPlugins and GetRequiredPackages report nothing: in the test bed every plugin is
// already on PATH and automatic plugin acquisition is off.
func (host *pythonLanguageHost) GetRequiredPlugins(ctx context.Context,
	req *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{Plugins: []*pulumirpc.PluginDependency{}}, nil
}

func (host *pythonLanguageHost) GetRequiredPackages(ctx context.Context,
	req *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{Packages: []*pulumirpc.PackageDependency{}}, nil
}

// InstallDependencies does nothing: the virtualenv is provisioned outside Pulumi.
func (host *pythonLanguageHost) InstallDependencies(req *pulumirpc.InstallDependenciesRequest,
	server pulumirpc.LanguageRuntime_InstallDependenciesServer,
) error {
	return nil
}

func (host *pythonLanguageHost) RuntimeOptionsPrompts(ctx context.Context,
	req *pulumirpc.RuntimeOptionsRequest,
) (*pulumirpc.RuntimeOptionsResponse, error) {
	return &pulumirpc.RuntimeOptionsResponse{}, nil
}

// About reports the interpreter path and version (for `pulumi about`).
func (host *pythonLanguageHost) About(ctx context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	cmd, err := host.pythonCommand(ctx, req.GetInfo(), "-c", "import platform, sys; print(sys.executable); print(platform.python_version())")
	if err != nil {
		return nil, err
	}
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("running %s: %w", cmd.Path, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	resp := &pulumirpc.AboutResponse{Executable: strings.TrimSpace(lines[0])}
	if len(lines) > 1 {
		resp.Version = strings.TrimSpace(lines[1])
	}
	return resp, nil
}

// GetProgramDependencies lists the packages installed in the interpreter's environment
// (`pip list`), always transitively; an empty list if pip is unavailable.
func (host *pythonLanguageHost) GetProgramDependencies(ctx context.Context,
	req *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	resp := &pulumirpc.GetProgramDependenciesResponse{Dependencies: []*pulumirpc.DependencyInfo{}}
	cmd, err := host.pythonCommand(ctx, req.GetInfo(), "-m", "pip", "list", "--format", "json",
		"--disable-pip-version-check")
	if err != nil {
		return nil, err
	}
	out, err := cmd.Output()
	if err != nil {
		logging.V(5).Infof("pip list failed: %v", err)
		return resp, nil
	}
	var packages []struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	}
	if err := json.Unmarshal(out, &packages); err != nil {
		return nil, fmt.Errorf("parsing `pip list` output: %w", err)
	}
	for _, p := range packages {
		resp.Dependencies = append(resp.Dependencies, &pulumirpc.DependencyInfo{Name: p.Name, Version: p.Version})
	}
	return resp, nil
}

// Run executes the program: <python> pulumi-language-python-exec <flags> <entry point> <args>,
// with PULUMI_CONFIG and PULUMI_CONFIG_SECRET_KEYS set, stdout/stderr passed through.
func (host *pythonLanguageHost) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	if req.GetAttachDebugger() {
		return &pulumirpc.RunResponse{Error: "this minimal python language host does not support --attach-debugger"}, nil
	}
	config := ""
	if req.GetConfig() != nil {
		b, err := json.Marshal(req.GetConfig())
		if err != nil {
			return nil, fmt.Errorf("failed to serialize configuration: %w", err)
		}
		config = string(b)
	}
	secretKeys := "[]"
	if req.GetConfigSecretKeys() != nil {
		b, err := json.Marshal(req.GetConfigSecretKeys())
		if err != nil {
			return nil, fmt.Errorf("failed to serialize configuration secret keys: %w", err)
		}
		secretKeys = string(b)
	}

	args := append([]string{host.exec}, host.constructArguments(req)...)
	cmd, err := host.pythonCommand(ctx, req.GetInfo(), args...)
	if err != nil {
		return nil, err
	}
	logging.V(5).Infof("Language host launching process: %s %s", cmd.Path, strings.Join(args, " "))
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	if config != "" {
		env = append(env, pulumiConfigVar+"="+config)
	}
	cmd.Env = append(env, pulumiConfigSecretKeysVar+"="+secretKeys)
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr

	if err := cmd.Run(); err != nil {
		// Make sure the engine sees everything the program wrote before it failed.
		_ = os.Stdout.Sync()
		_ = os.Stderr.Sync()
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if status, ok := exitErr.Sys().(syscall.WaitStatus); ok {
				switch status.ExitStatus() {
				case 0:
					err = fmt.Errorf("program exited unexpectedly: %w", exitErr)
				case exitedAfterShowingUserActionableMessage:
					return &pulumirpc.RunResponse{Bail: true}, nil
				default:
					err = fmt.Errorf("program exited with non-zero exit code: %d", status.ExitStatus())
				}
			} else {
				err = fmt.Errorf("program exited unexpectedly: %w", exitErr)
			}
		} else {
			err = fmt.Errorf("problem executing program (could not run language executor): %w", err)
		}
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}

// constructArguments builds the exec shim's command line exactly like upstream.
func (host *pythonLanguageHost) constructArguments(req *pulumirpc.RunRequest) []string {
	var args []string
	maybeAppendArg := func(k, v string) {
		if v != "" {
			args = append(args, "--"+k, v)
		}
	}
	maybeAppendArg("monitor", req.GetMonitorAddress())
	maybeAppendArg("engine", host.engineAddress)
	maybeAppendArg("project", req.GetProject())
	maybeAppendArg("root_directory", req.GetInfo().GetRootDirectory())
	maybeAppendArg("stack", req.GetStack())
	maybeAppendArg("pwd", req.GetPwd())
	maybeAppendArg("dry_run", strconv.FormatBool(req.GetDryRun()))
	maybeAppendArg("parallel", strconv.Itoa(int(req.GetParallel())))
	maybeAppendArg("tracing", host.tracing)
	maybeAppendArg("organization", req.GetOrganization())

	// The engine always sends an entry point ("." for the program directory); older engines
	// sent `program` instead.
	entry := firstNonEmpty(req.GetInfo().GetEntryPoint(), req.GetProgram(), ".")
	args = append(args, entry)
	return append(args, req.GetArgs()...)
}
