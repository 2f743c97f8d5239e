package dev.esfleet.engine;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * Starts one OpenSearch node from the jars on the classpath, with the command-line contract
 * of the distribution's {@code bin/opensearch} that esfleet's generated units rely on:
 *
 * <ul>
 *   <li>{@code OPENSEARCH_PATH_CONF} names the configuration directory, which holds
 *       {@code opensearch.yml} (and optionally {@code log4j2.properties});
 *   <li>{@code -Ekey=value} arguments override settings;
 *   <li>{@code OPENSEARCH_HOME} (set by {@code bin/opensearch}) is {@code path.home};
 *   <li>SIGTERM closes the node cleanly and the process exits 143.
 * </ul>
 *
 * <p>Installed plugins ({@code plugins/}, where scripts/es-engine puts the security plugin)
 * load as in the distribution. What the distribution adds and this does not: the bootstrap
 * checks (esfleet's scheduler checks the hosts' sysctls itself), the Java security manager,
 * the keystore, and modules beyond the Netty transport (no painless scripts, no ingest
 * pipelines, no analysis-common).
 */
public final class Launcher {

    private Launcher() {}

    public static void main(String[] args) throws Exception {
        String home = System.getenv("OPENSEARCH_HOME");
        if (home == null || home.isEmpty()) {
            fail("OPENSEARCH_HOME is not set: start the engine through its bin/opensearch");
        }
        String conf = System.getenv("OPENSEARCH_PATH_CONF");
        Path configDir = Paths.get(conf == null || conf.isEmpty() ? home + "/config" : conf);
        if (!Files.isRegularFile(configDir.resolve("opensearch.yml"))) {
            fail(configDir.resolve("opensearch.yml") + " does not exist: OPENSEARCH_PATH_CONF must name a directory with opensearch.yml");
        }

        Settings.Builder overrides = Settings.builder().put("path.home", home);
        for (String arg : args) {
            if (!arg.startsWith("-E") || arg.indexOf('=') < 3) {
                fail("unknown argument " + arg + ": only -Ekey=value settings are accepted");
            }
            int eq = arg.indexOf('=');
            overrides.put(arg.substring(2, eq), arg.substring(eq + 1));
        }

        // Reads opensearch.yml from configDir and applies the -E overrides on top.
        Environment env = InternalSettingsPreparer.prepareEnvironment(
            overrides.build(), Collections.emptyMap(), configDir, () -> System.getenv("HOSTNAME"));
        // The node name first: the log pattern's %node_name converter reads it when the
        // configuration is built (set later, every line would say "[%node_name]").
        String nodeName = Node.NODE_NAME_SETTING.get(env.settings());
        LogConfigurator.setNodeName(nodeName);
        if (Files.isRegularFile(configDir.resolve("log4j2.properties"))) {
            LogConfigurator.configure(env);
        } else {
            LogConfigurator.configureWithoutConfig(env.settings());
        }

        // The Netty transport is a module in the distribution; here it is on the classpath.
        List<Class<? extends Plugin>> classpathPlugins = List.of(Netty4Plugin.class);
        Node node = new ClasspathNode(env, classpathPlugins);

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                System.err.println("closing node " + nodeName + ": " + e);
            } finally {
                stopped.countDown();
            }
        }, "esfleet-engine-shutdown"));

        node.start();
        // Node threads are daemons: without this the JVM would exit right after start.
        stopped.await();
    }

    private static void fail(String message) {
        System.err.println("opensearch: " + message);
        System.exit(64);
    }

    /** {@link Node}'s constructor that takes classpath plugins is protected. */
    private static final class ClasspathNode extends Node {
        ClasspathNode(Environment env, List<Class<? extends Plugin>> plugins) {
            super(env, plugins, true);
        }
    }
}
