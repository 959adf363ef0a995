// What DBeaver does with the real Trino JDBC driver, printed as JSON so a test can compare a run
// through the gateway with a run straight against the coordinator.
//
//   java -cp trino-jdbc-476.jar JdbcCheck.java MODE jdbc:trino://127.0.0.1:PORT USER
//
// MODE is one of:
//   metadata  DatabaseMetaData as DBeaver reads it on connect (product, catalogs, schemas, table
//             types, tables, columns); one JSON document.
//   prepared  PreparedStatement with parameters of several types, executed twice with different
//             values; one JSON document (rows and each execution's query id).
//   cancel    starts a long query, prints {"queryId": ...} once executeQuery has returned, reads
//             the rows in another thread, waits for a line on stdin, calls Statement.cancel(),
//             then prints what the reading thread saw ({"error", "sqlState", "causes"} or "rows").
//
// Extra connection properties may follow as key=value arguments (e.g. explicitPrepare=false).
// Single-file source launch (Java 11+): no build step.

import io.trino.jdbc.TrinoResultSet;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.Date;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        String mode = args[0];
        Properties props = new Properties();
        props.setProperty("user", args[2]);          // DBeaver: user property, no password, no SSL
        for (int i = 3; i < args.length; i++) {
            String[] kv = args[i].split("=", 2);
            props.setProperty(kv[0], kv[1]);
        }
        try (Connection conn = DriverManager.getConnection(args[1], props)) {
            switch (mode) {
                case "metadata" -> System.out.println(json(metadata(conn)));
                case "prepared" -> System.out.println(json(prepared(conn)));
                case "cancel" -> cancel(conn);
                default -> throw new IllegalArgumentException("unknown mode " + mode);
            }
        }
    }

    static Map<String, Object> metadata(Connection conn) throws SQLException {
        DatabaseMetaData md = conn.getMetaData();
        Map<String, Object> out = new LinkedHashMap<>();
        List<String> ids = new ArrayList<>();
        out.put("product", md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());
        out.put("driver", md.getDriverName() + " " + md.getDriverVersion());
        out.put("url", md.getURL());
        out.put("catalogs", rows(md.getCatalogs(), ids));
        out.put("schemas", rows(md.getSchemas(), ids));
        out.put("tpchSchemas", rows(md.getSchemas("tpch", null), ids));
        out.put("tableTypes", rows(md.getTableTypes(), ids));
        out.put("tables", rows(md.getTables("tpch", "tiny", null, new String[] {"TABLE", "VIEW"}), ids));
        out.put("columns", rows(md.getColumns("tpch", "tiny", "nation", null), ids));
        out.put("columnsLike", rows(md.getColumns("tpch", "ti_y", "line%", "%key"), ids));
        out.put("primaryKeys", rows(md.getPrimaryKeys("tpch", "tiny", "nation"), ids));
        out.put("queryIds", ids);
        return out;
    }

    static Map<String, Object> prepared(Connection conn) throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        List<String> ids = new ArrayList<>();
        String sql = "SELECT n.name, r.name AS region, ? AS tag, CAST(? AS decimal(10, 2)) AS amount, ? AS day "
                + "FROM tpch.tiny.nation n JOIN tpch.tiny.region r ON n.regionkey = r.regionkey "
                + "WHERE n.nationkey < ? AND n.name LIKE ? ORDER BY n.nationkey";
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            bind(ps, "it's quoted", new BigDecimal("12.30"), Date.valueOf("2024-02-29"), 20L, "%A%");
            out.put("first", rows(ps.executeQuery(), ids));
            bind(ps, "second", new BigDecimal("-1.5"), Date.valueOf("1999-12-31"), 5L, "%");
            out.put("second", rows(ps.executeQuery(), ids));
            out.put("parameterCount", ps.getParameterMetaData().getParameterCount());
        }
        try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM tpch.tiny.orders WHERE orderkey < ?")) {
            bind(ps, 1000);
            out.put("count", rows(ps.executeQuery(), ids));
        }
        out.put("queryIds", ids);
        return out;
    }

    /** The typed setters an application calls (setString, setBigDecimal, ...), by value type. */
    static void bind(PreparedStatement ps, Object... values) throws SQLException {
        for (int i = 0; i < values.length; i++) {
            Object v = values[i];
            if (v instanceof String x) {
                ps.setString(i + 1, x);
            } else if (v instanceof BigDecimal x) {
                ps.setBigDecimal(i + 1, x);
            } else if (v instanceof Date x) {
                ps.setDate(i + 1, x);
            } else if (v instanceof Long x) {
                ps.setLong(i + 1, x);
            } else if (v instanceof Integer x) {
                ps.setInt(i + 1, x);
            } else {
                throw new IllegalArgumentException("no setter for " + v);
            }
        }
    }

    static void cancel(Connection conn) throws Exception {
        Statement stmt = conn.createStatement();
        // executeQuery returns once the coordinator has sent the columns; the rows come later.
        ResultSet rs = stmt.executeQuery("SELECT count(*) FROM tpch.sf100.lineitem WHERE comment LIKE '%x%'");
        Map<String, Object> started = new LinkedHashMap<>();
        started.put("queryId", rs.unwrap(TrinoResultSet.class).getQueryId());
        System.out.println(json(started));
        System.out.flush();
        CompletableFuture<Map<String, Object>> outcome = CompletableFuture.supplyAsync(() -> {
            Map<String, Object> o = new LinkedHashMap<>();
            try {
                o.put("rows", rows(rs, new ArrayList<>()));
            } catch (SQLException e) {
                o.put("error", e.getMessage());
                o.put("sqlState", e.getSQLState());
                List<String> causes = new ArrayList<>();
                for (Throwable t = e.getCause(); t != null; t = t.getCause()) {
                    causes.add(t.getClass().getName() + ": " + t.getMessage());
                }
                o.put("causes", causes);
            }
            return o;
        });
        new BufferedReader(new InputStreamReader(System.in)).readLine();   // the test says when
        stmt.cancel();                       // from this thread, while the other one reads rows
        System.out.println(json(outcome.get(60, TimeUnit.SECONDS)));
    }

    /** All rows as lists of strings (getString: what a client shows), plus the query id. */
    static List<List<String>> rows(ResultSet rs, List<String> ids) throws SQLException {
        List<List<String>> out = new ArrayList<>();
        try (rs) {
            ResultSetMetaData md = rs.getMetaData();
            while (rs.next()) {
                List<String> row = new ArrayList<>();
                for (int i = 1; i <= md.getColumnCount(); i++) {
                    row.add(rs.getString(i));
                }
                out.add(row);
            }
            if (rs.isWrapperFor(TrinoResultSet.class)) {
                ids.add(rs.unwrap(TrinoResultSet.class).getQueryId());
            }
        }
        return out;
    }

    static String json(Object v) {
        if (v == null) {
            return "null";
        }
        if (v instanceof Number || v instanceof Boolean) {
            return v.toString();
        }
        if (v instanceof Map<?, ?> m) {
            List<String> parts = new ArrayList<>();
            m.forEach((k, x) -> parts.add(json(k.toString()) + ":" + json(x)));
            return "{" + String.join(",", parts) + "}";
        }
        if (v instanceof List<?> l) {
            List<String> parts = new ArrayList<>();
            l.forEach(x -> parts.add(json(x)));
            return "[" + String.join(",", parts) + "]";
        }
        StringBuilder sb = new StringBuilder("\"");
        for (char c : v.toString().toCharArray()) {
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
                }
            }
        }
        return sb.append('"').toString();
    }
}
