# bench/chart.gp: the chart of bench/compare.sh, server CPU µs per delivery
# for each load and server, as grouped bars on a log scale (the servers are
# an order of magnitude or more apart), one panel with one publish at a time
# and one with 16 in flight.
#
#   gnuplot -c bench/chart.gp CPU1.dat CPU16.dat OUT.png ["BURST OPTIONS"]
#
# Each .dat file (written by compare.sh) has a header line "load SERVER..."
# whose names become the legend, then one line per load: its name and one
# value per server, NaN where the server did not run it or failed.

if (ARGC < 3) {
    print "usage: gnuplot -c chart.gp CPU1.dat CPU16.dat OUT.png"
    exit status 1
}
dat1 = ARG1
dat16 = ARG2
out = ARG3
burst = (ARGC >= 4) ? " (" . ARG4 . ")" : ""

stats dat1 using 0 nooutput
nloads = STATS_records
ncols = system("head -n 1 '" . dat1 . "' | wc -w") + 0
# Wide enough that load names and bar groups stay readable.
width = nloads * 70 + 260
if (width < 900) width = 900

set terminal pngcairo size width, 900 font "DejaVu Sans,11" noenhanced
set output out
set datafile missing NaN
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set grid ytics mytics lc rgb "#dddddd"
set ylabel "server CPU µs per delivery (log)"
set xtics rotate by -30 nomirror
set key outside right top vertical
set format y "%g"
# Fixed margins: both panels get the same plot area (the legend is drawn
# only in the first one, right of it).
set lmargin at screen 70.0 / width
set rmargin at screen 1.0 - 190.0 / width
set linetype 1 lc rgb "#1f77b4"
set linetype 2 lc rgb "#d62728"
set linetype 3 lc rgb "#9467bd"
set linetype 4 lc rgb "#7f7f7f"
set linetype 5 lc rgb "#bcbd22"
set linetype 6 lc rgb "#2ca02c"

set multiplot layout 2, 1 title "sluice, nchan, Pushpin and the floor: server CPU per delivery (lower is better)"
set title "one publish at a time (-c 1 -K 1)"
plot for [i=2:ncols] dat1 using i:xtic(1) title columnheader(i)
set title "16 publishes in flight" . burst
unset key
plot for [i=2:ncols] dat16 using i:xtic(1) title columnheader(i)
unset multiplot
