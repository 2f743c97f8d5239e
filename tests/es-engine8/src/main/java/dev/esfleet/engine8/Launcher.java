package dev.esfleet.engine8;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Collections;
import java.util.concurrent.CountDownLatch;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.InternalSettingsPreparer;
import org.elasticsearch.node.Node;

/**
 * Starts one Elasticsearch 8 node with the command-line contract of the distribution's
 * {@code bin/elasticsearch} that esfleet's generated units rely on:
 *
 * <ul>
 *   <li>{@code ES_PATH_CONF} names the configuration directory, which holds
 *       {@code elasticsearch.yml} and {@code log4j2.properties};
 *   <li>{@code -Ekey=value} arguments override settings;
 *   <li>{@code ES_HOME} (set by {@code bin/elasticsearch}) is {@code path.home}, whose
 *       {@code modules/} hold the Netty transport;
 *   <li>SIGTERM closes the node cleanly and the process exits 143.
 * </ul>
 *
 * <p>Runs with the server on the module path, as the distribution does (its plugin loader
 * needs the server to be a named module). What the distribution adds and this does not:
 * the bootstrap checks, the security manager, the keystore, x-pack, and every module but
 * the transport (so {@code GET /}, served by the rest-root module, answers 405).
 */
public final class Launcher {

    private Launcher() {}

    public static void main(String[] args) throws Exception {
        // Elasticsearch's own logging facade must have its provider before any class logs.
        LogConfigurator.configureESLogging();
        String home = System.getenv("ES_HOME");
        if (home == null || home.isEmpty()) {
            fail("ES_HOME is not set: start the engine through its bin/elasticsearch");
        }
        String conf = System.getenv("ES_PATH_CONF");
        Path configDir = Paths.get(conf == null || conf.isEmpty() ? home + "/config" : conf);
        if (!Files.isRegularFile(configDir.resolve("elasticsearch.yml"))) {
            fail(configDir.resolve("elasticsearch.yml") + " does not exist: ES_PATH_CONF must name a directory with elasticsearch.yml");
        }
        Settings.Builder overrides = Settings.builder().put("path.home", home);
        for (String arg : args) {
            if (!arg.startsWith("-E") || arg.indexOf('=') < 3) {
                fail("unknown argument " + arg + ": only -Ekey=value settings are accepted");
            }
            int eq = arg.indexOf('=');
            overrides.put(arg.substring(2, eq), arg.substring(eq + 1));
        }
        Environment env = InternalSettingsPreparer.prepareEnvironment(
            overrides.build(), Collections.emptyMap(), configDir, () -> System.getenv("HOSTNAME"));
        // The name before the logging configuration: its %node_name converter reads it.
        String nodeName = Node.NODE_NAME_SETTING.get(env.settings());
        LogConfigurator.setNodeName(nodeName);
        if (Files.isRegularFile(configDir.resolve("log4j2.properties"))) {
            LogConfigurator.configure(env, false);
        } else {
            LogConfigurator.configureWithoutConfig(env.settings());
        }
        Node node = new Node(env);
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
        System.err.println("elasticsearch: " + message);
        System.exit(64);
    }
}
